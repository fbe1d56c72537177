"""The problems multireg solves, built on the numerics one level up (grid, interpolation,
transforms, distances, regularizers, optimize): registration (one pair, a batch), the homotopy
tracer, the separable least-squares engine and its two applications, super-resolution and
motion-corrected dynamics. Modules here import the numerics and each other, never the workflow,
the command line or the package's facade.
"""
