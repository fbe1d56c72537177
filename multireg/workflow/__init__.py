"""What users do with the problems' results: apply a map to images and points (apply), exchange
transforms with ITK-based tools (itk), score a result (metrics), run many registrations (many),
compare backends (validate), and show and report results (figures, report, demo). Modules here
import the numerics and the problems, never the command line or the package's facade.
"""
