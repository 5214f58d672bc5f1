"""Careless and hostile use of the commands, one file a subject: a command (test_prepare.py,
test_pretrain.py, test_embed_predict.py, ...) or what several commands read (records, dataset
layouts, weight files, checkpoints, flags). Each case ends in one line on stderr that names the
file, field or flag (exit 1 for data, 2 for a flag; a traceback only with --verbose), in a
counted skip, or in the input read as what it is; every input and pre-existing file is left as
it was (sha256 before and after) and nothing is written on error. helpers.py holds what the
files share."""
