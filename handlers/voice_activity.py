"""``voice_activity``: is there speech in a WAV clip, and where? (Silero VAD)

Each clip is decoded like ``audio_classifier``'s (any PCM or float WAV, averaged to mono),
resampled to ``sample_rate`` and cut into 32 ms frames (512 samples at 16 kHz). The model
gives a speech probability per frame; frames are joined into speech segments with Silero's own
rules (hysteresis between ``threshold`` and ``neg_threshold``, minimum speech and silence
durations, padding), and the answer is::

    {"label": "speech", "speech_seconds": 2.6, "duration_seconds": 5.18,
     "segments": [{"start": 0.47, "end": 1.01, "probability": 0.93}, ...]}

``label`` is ``speech`` when at least one segment was found, else ``non_speech``.

Model calling convention (Silero VAD's TorchScript file ``silero_vad/data/silero_vad.jit``):
``model(frames, sample_rate)`` with ``frames`` ``[batch, frame_samples]`` returns speech
probabilities ``[batch, 1]``; the model keeps a recurrent state per batch row between calls,
and its ``reset_states()``, when it has one, is called before each batch. Clips of a batch
are zero-padded to the longest; each row's state is its own, so an answer never depends on
its batch-mates.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.nn import functional as nnf

from handlers.audio_io import check_audio_media_type, decode_clip
from handlers.base import BaseHandler
from handlers.options import VoiceActivityOptions


class VoiceActivity(BaseHandler):
    """Returns ``{"label", "speech_seconds", "duration_seconds", "segments"}`` per WAV clip."""

    name = "voice_activity"
    Options = VoiceActivityOptions
    options: VoiceActivityOptions

    def preprocess(self, data: bytes, content_type: str | None = None) -> torch.Tensor:
        check_audio_media_type(content_type, self.name)
        o = self.options
        return decode_clip(data, o.sample_rate, o.max_seconds, crop=o.long_audio == "crop")

    def example_input(self) -> torch.Tensor:
        return torch.zeros(4 * self.options.frame_samples)

    def collate(self, items: list[torch.Tensor]) -> torch.Tensor:
        """``[batch, frames, frame_samples]``: clips zero-padded to the longest one's last frame."""
        frame = self.options.frame_samples
        frames = max(-(-len(item) // frame) for item in items)
        return torch.stack([nnf.pad(item, (0, frames * frame - len(item))) for item in items]).view(
            len(items), frames, frame
        )

    def inference(self, batch: torch.Tensor) -> torch.Tensor:
        """Speech probability of every frame, ``[batch, frames]``."""
        assert self.model is not None, "load() must run before inference()"
        reset = getattr(self.model, "reset_states", None)
        if reset is not None:
            reset()
        batch = batch.to(self.device, non_blocking=True)
        with torch.inference_mode():
            # Frame after frame: the model carries its state from one to the next.
            probabilities = [self.model(batch[:, t], self.options.sample_rate) for t in range(batch.shape[1])]
        return torch.cat(probabilities, dim=1).float().cpu()

    def postprocess(self, output: torch.Tensor, items: list[torch.Tensor]) -> list[dict[str, Any]]:
        frame = self.options.frame_samples
        return [
            self.answer(probabilities[: -(-len(item) // frame)].tolist(), len(item))
            for probabilities, item in zip(output, items, strict=True)
        ]

    def answer(self, probabilities: list[float], samples: int) -> dict[str, Any]:
        """One clip's answer from its frame probabilities and its length in samples."""
        rate = self.options.sample_rate
        found = self.speech_segments(probabilities, samples)
        segments = [self.segment(probabilities, start, end) for start, end in found]
        return {
            "label": "speech" if segments else "non_speech",
            "speech_seconds": round(sum((s["end"] - s["start"] for s in segments), 0.0), 3),
            "duration_seconds": round(samples / rate, 3),
            "segments": segments,
        }

    def segment(self, probabilities: list[float], start: int, end: int) -> dict[str, Any]:
        """``{"start", "end", "probability"}`` of the speech between two sample positions."""
        rate, frame = self.options.sample_rate, self.options.frame_samples
        inside = probabilities[start // frame : max(-(-end // frame), start // frame + 1)]
        return {
            "start": round(start / rate, 3),
            "end": round(end / rate, 3),
            "probability": round(sum(inside) / len(inside), 4),
        }

    def speech_segments(self, probabilities: list[float], samples: int) -> list[list[int]]:
        """``[start, end]`` sample positions of speech, as Silero's ``get_speech_timestamps``.

        (Without its ``max_speech_duration_s`` splitting, which is off by default there too.)
        """
        closed, open_start = self.closed_segments(probabilities)
        min_speech = self.options.sample_rate * self.options.min_speech_ms / 1000
        if open_start is not None and samples - open_start > min_speech:
            closed.append([open_start, samples])
        return self.padded(closed, samples)

    def closed_segments(self, probabilities: list[float]) -> tuple[list[list[int]], int | None]:
        """Speech segments that have ended (unpadded), and where speech still going on began."""
        o, frame = self.options, self.options.frame_samples
        min_speech = o.sample_rate * o.min_speech_ms / 1000
        min_silence = o.sample_rate * o.min_silence_ms / 1000
        segments: list[list[int]] = []
        start: int | None = None
        silence_from: int | None = None  # where a pause began inside speech
        for i, p in enumerate(probabilities):
            position = i * frame
            if p >= o.threshold:
                silence_from = None
                if start is None:
                    start = position
                    continue
            if start is not None and p < o.exit_threshold:
                if silence_from is None:
                    silence_from = position
                if position - silence_from < min_silence:
                    continue
                if silence_from - start > min_speech:
                    segments.append([start, silence_from])
                start = silence_from = None
        return segments, start

    def padded(self, segments: list[list[int]], samples: int) -> list[list[int]]:
        """Each segment widened by ``speech_pad_ms``, neighbours closer than two pads sharing
        the gap."""
        pad = int(self.options.sample_rate * self.options.speech_pad_ms / 1000)
        segments = [list(s) for s in segments]
        for i, segment in enumerate(segments):
            if i == 0:
                segment[0] = max(0, segment[0] - pad)
            if i + 1 < len(segments):
                following = segments[i + 1]
                gap = following[0] - segment[1]
                widen = gap // 2 if gap < 2 * pad else pad
                segment[1] += widen
                following[0] = max(0, following[0] - widen)
            else:
                segment[1] = min(samples, segment[1] + pad)
        return segments

    def predict_stream(self, item: torch.Tensor) -> Iterator[dict[str, Any]]:
        """Each speech segment as soon as it can no longer change, then the summary
        ``{"label", "speech_seconds", "duration_seconds"}``: with the segments in order, the
        same answer as :meth:`postprocess` gives for the clip.

        The clip runs about a second of frames at a time; a segment is final once the speech
        after it (which decides its padding) has begun or cannot begin close to it.
        """
        assert self.model is not None, "load() must run before predict_stream()"
        o, frame, samples = self.options, self.options.frame_samples, len(item)
        frames = self.collate([item])[0].to(self.device)
        pad = int(o.sample_rate * o.speech_pad_ms / 1000)
        block = max(1, o.sample_rate // frame)
        reset = getattr(self.model, "reset_states", None)
        if reset is not None:
            reset()
        probabilities: list[float] = []
        sent = 0
        for first in range(0, len(frames), block):
            with torch.inference_mode():
                for t in range(first, min(first + block, len(frames))):
                    probabilities.append(float(self.model(frames[t : t + 1], o.sample_rate)[0, 0]))
            seen = min(samples, len(probabilities) * frame)
            closed, open_start = self.closed_segments(probabilities)
            final = self.padded(closed, samples)
            while sent < len(closed):
                end = closed[sent][1]
                followed = sent + 1 < len(closed)
                far = (open_start is None or open_start >= end + 2 * pad) and seen >= end + 2 * pad
                if not (followed or far):
                    break
                yield self.segment(probabilities, *final[sent])
                sent += 1
        whole = self.answer(probabilities[: -(-samples // frame)], samples)
        yield from whole["segments"][sent:]
        yield {key: value for key, value in whole.items() if key != "segments"}
