#!/usr/bin/env python
"""Median CPU train-step time of meg2vec vs fairseq's audio wav2vec2 (equal dims and frames).

Both models are built from the model section of a shipped config: meg2vec reads a
``(B, 306, T)`` batch, fairseq's ``Wav2Vec2Model`` a ``(B, T)`` batch through the same conv
stack, so both see the same number of frames. The ratio is meg2vec's cost on a train step
(forward, wav2vec loss, backward, Adam). Goal: ratio <= 1.10.

A third model separates the two causes of a difference: meg2vec built with ``in_channels=1``
on a ``(B, 1, T)`` batch does exactly the audio model's arithmetic through the plugin's code
path, so ``code_path_ratio`` is the plugin's own overhead, and the rest of ``ratio`` is the
arithmetic of reading 306 sensors in the first convolution (``306 * kernel`` inputs per
output instead of ``kernel``).

    python benchmarks/train_step.py --config meg2vec_tiny --batch 8 --samples 1250
"""

import argparse
import json

import torch
from _common import (
    build_audio_wav2vec2,
    build_criterion,
    build_meg2vec,
    make_train_step,
    time_interleaved,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="meg2vec_tiny", help="shipped config name")
    parser.add_argument("--batch", type=int, default=8, help="segments per batch")
    parser.add_argument("--samples", type=int, default=1250, help="time samples per segment")
    parser.add_argument("--repeats", type=int, default=20, help="timed steps per model")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    meg2vec, wav2vec2 = build_meg2vec(args.config), build_audio_wav2vec2(args.config)
    criterion = build_criterion(args.config)
    channels = meg2vec.cfg.in_channels
    ids = torch.arange(args.batch)
    meg_batch = {
        "id": ids,
        "net_input": {"source": torch.randn(args.batch, channels, args.samples)},
    }
    audio_batch = {"id": ids, "net_input": {"source": torch.randn(args.batch, args.samples)}}
    frames = meg2vec.feature_extractor(meg_batch["net_input"]["source"][:1]).shape[-1]
    assert frames == wav2vec2.feature_extractor(audio_batch["net_input"]["source"][:1]).shape[-1]

    one_channel = build_meg2vec(args.config, in_channels=1)
    one_channel_batch = {
        "id": ids,
        "net_input": {"source": audio_batch["net_input"]["source"][:, None]},
    }

    medians = time_interleaved(
        {
            "meg2vec": make_train_step(meg2vec, criterion, lambda: meg_batch),
            "wav2vec2": make_train_step(wav2vec2, criterion, lambda: audio_batch),
            "meg2vec_1ch": make_train_step(one_channel, criterion, lambda: one_channel_batch),
        },
        repeats=args.repeats,
    )
    ratio = medians["meg2vec"] / medians["wav2vec2"]
    result = {
        "config": args.config,
        "batch": args.batch,
        "samples": args.samples,
        "frames": frames,
        "threads": args.threads,
        "meg2vec_step_s": round(medians["meg2vec"], 4),
        "wav2vec2_step_s": round(medians["wav2vec2"], 4),
        "meg2vec_1ch_step_s": round(medians["meg2vec_1ch"], 4),
        "ratio": round(ratio, 3),
        "code_path_ratio": round(medians["meg2vec_1ch"] / medians["wav2vec2"], 3),
        "goal": "ratio <= 1.10",
        "met": ratio <= 1.10,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
