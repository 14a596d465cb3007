# Empty compiler generated dependencies file for ljasync.
# This may be replaced when dependencies are built.
