"""The functional core's home: what services decide with, free of any external system's client."""
