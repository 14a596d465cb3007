error("bad_init cannot start")
