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
