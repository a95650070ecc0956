"""Reading and writing our checkpoint folders, in one package: folder layout (tags, `latest`
pointers), metadata (`bloom_config.json`), integrity (manifest), layer files, the loaders that put
layers into a model or pipeline stage, the HF reader, and the HF <-> ours conversions."""
