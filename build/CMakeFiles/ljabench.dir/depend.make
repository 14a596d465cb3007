# Empty dependencies file for ljabench.
# This may be replaced when dependencies are built.
