"""Project-wide defaults: the sensor count and sampling rate of the reference data.

LibriBrain (and most Neuromag/MEGIN data) has 306 MEG sensors; segments are written at
250 Hz by default. The library and the command lines take their defaults from here; the
pre-training yaml configs write the same values literally (hydra cannot import them).
"""

#: MEG sensors of a MEGIN/Neuromag system (102 magnetometers + 204 planar gradiometers),
#: rows per segment by default.
N_SENSORS = 306

#: Default sampling rate of the segments (Hz).
SFREQ = 250.0

#: Default bound on ``|x|`` of the task (``task.max_abs_value``). Segments are z-scored per
#: channel by ``make_manifest`` (and clipped to +-10 for LibriBrain), so real data lie within a
#: few tens of standard deviations; 1000 standard deviations is no physiological signal but a
#: unit error or a corrupt file, whose finite but huge values would otherwise overflow the
#: gradients (fairseq's "gradients are Nan/Inf", naming no file). Also well inside float16.
MAX_ABS_VALUE = 1000.0
