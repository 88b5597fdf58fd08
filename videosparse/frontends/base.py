"""The front-end protocol and its registry (keyed by config.json ``model_type``).

A front end answers what `VideoQA` (and the CLI, the evaluation runner, the scripts) must know about
one model family above the decoder: the transformers class to load, the prompt template and how the
video placeholder is expanded, the preprocessing spec, the frame geometry (tokens per frame, patch
grid, CLS), the context limit, the decoder depth, the default number of frames, and how projected
video features are computed and handed to ``generate``. The pruning itself is the family adapter's and
the engine's (``videosparse.models``, ``videosparse.engine``).

Front ends are stateless: every method takes the model's (transformers) config or the model. Module
import is free of torch and transformers; methods import them when called.
"""

from __future__ import annotations

from typing import Any

_REGISTRY: dict = {}  # model_type -> FrontEnd instance


class FrontEnd:
    """Protocol of a family's front end. Subclasses set ``name``, ``model_types``, ``description``,
    ``prompt_template``, ``video_placeholder``, ``has_cls``, ``default_num_frames`` and implement the
    methods that raise ``NotImplementedError``; the others are defaults that read the usual
    transformers config fields (``text_config.max_position_embeddings``, ``text_config.num_hidden_layers``).
    """

    name: str = ""
    model_types: tuple = ()  # config.json model_type values
    description: str = ""
    prompt_template: str = ""  # with the video placeholder and "{question}"
    video_placeholder: str = "<video>"  # the token the template holds once; expanded to every visual token
    has_cls: bool = False  # a frame's visual tokens start with a CLS token
    tail_tokens: int = 0  # placeholder tokens after the visual ones that close the video block (not visual)
    default_num_frames: int = 8
    # True: a frame's token count depends on the video (its resolution; Qwen2.5-VL / Qwen3-VL's smart_resize), so
    # ``tokens_per_frame(config)`` is None and the geometry of each video comes from ``encode_frames``
    dynamic_grid: bool = False
    frames_per_step: int = 1  # sampled frames one trace "frame" covers (Qwen's temporal patch: 2)

    # ---------------------------------------------------------------- loading
    def model_class(self) -> type:  # pragma: no cover - protocol
        """The transformers class ``from_pretrained`` loads (imported when called)."""
        raise NotImplementedError

    def load_model(self, source: str, **kwargs: Any) -> Any:
        return self.model_class().from_pretrained(source, **kwargs)

    def preprocessor_spec(self, source: str, local_files_only: bool = False) -> Any:  # pragma: no cover
        """The checkpoint's frame preprocessing (`videosparse.video.VideoProcessorSpec`)."""
        raise NotImplementedError

    def default_spec(self) -> Any:
        from videosparse.video import VideoProcessorSpec

        return VideoProcessorSpec()

    def check_spec(self, config: Any, spec: Any) -> None:
        """ValueError when the preprocessing does not give the frames the vision tower expects."""

    # ---------------------------------------------------------------- geometry and limits
    def frame_grid(self, config: Any) -> tuple:  # pragma: no cover - protocol
        """(rows, cols) of a frame's patch tokens."""
        raise NotImplementedError

    def tokens_per_frame(self, config: Any) -> int | None:
        """Visual tokens of one frame: the patch grid, plus the CLS token when the family keeps it (None for a
        ``dynamic_grid`` family: each video has its own)."""
        rows, cols = self.frame_grid(config)
        return int(rows) * int(cols) + (1 if self.has_cls else 0)

    def max_positions(self, config: Any) -> int | None:
        """Positions the decoder was built for (prompt + new tokens beyond it are refused); None = unknown."""
        return getattr(config.text_config, "max_position_embeddings", None)

    def num_layers(self, config: Any) -> int:
        """Decoder layers (the depth sparsity configs are checked against)."""
        return int(config.text_config.num_hidden_layers)

    def default_frames(self, spec: Any = None) -> int:
        """Frames sampled per video when the caller does not say: the checkpoint's own setting (its video
        processor's ``num_frames``, read into the preprocessing spec) when it has one, else the family's."""
        n = getattr(spec, "num_frames", None)
        return int(n) if n else int(self.default_num_frames)

    def video_token_id(self, config: Any) -> int:  # pragma: no cover - protocol
        raise NotImplementedError

    # ---------------------------------------------------------------- prompts
    def check_template(self, template: str) -> None:
        if self.video_placeholder not in template or "{question}" not in template:
            raise ValueError(f"prompt_template must contain '{self.video_placeholder}' and '{{question}}'")

    def prompt(self, question: str, num_frames: int, tokens_per_frame: int, template: str | None = None,
               extra: dict | None = None) -> str:
        """The full prompt text: the template with the question and the video placeholder expanded to
        ``num_frames x tokens_per_frame`` placeholder tokens (a pool of K tokens: 1 x K), plus the family's
        ``tail_tokens`` closing the video block. ``extra``: the video's ``encode_frames`` extra (families whose
        prompt holds per-video text, e.g. Qwen3-VL's timestamps; None: a nominal prompt of the same length class)."""
        from videosparse.video import expand_video_prompt

        template = self.prompt_template if template is None else template
        if num_frames < 1 or tokens_per_frame < 1:
            raise ValueError(f"num_frames and tokens_per_frame must be >= 1, got {num_frames}, {tokens_per_frame}")
        return expand_video_prompt(template.format(question=question.strip()), 1,
                                   num_frames * tokens_per_frame + self.tail_tokens, video_token=self.video_placeholder)

    # ---------------------------------------------------------------- model inputs
    def encode_frames(self, model: Any, frames: Any, spec: Any, clip: Any = None) -> tuple:
        """uint8 frames (T, H, W, 3) of one video -> (projected visual tokens (T', P, D), extra): T' trace frames
        (``T / frames_per_step``), P tokens each; ``extra`` is what the family needs besides the tokens to build
        the prompt and ``generate``'s inputs (empty here; ``clip``: the Clip the frames come from, for its times)."""
        from videosparse.video import preprocess_frames

        pv = preprocess_frames(frames, spec).to(model.device, model.dtype)
        return self.video_features(model, pv), {}

    def video_features(self, model: Any, pixel_values: Any) -> Any:  # pragma: no cover - protocol
        """Projected visual tokens (T, P, D) of one video's preprocessed frames (T, 3, H, W)."""
        raise NotImplementedError

    def feature_inputs(self, model: Any, features: Any) -> dict:  # pragma: no cover - protocol
        """``generate`` keyword arguments handing it precomputed visual tokens (B, n, D): each sample's
        frames x tokens per frame (or pool) in prompt order; the family adds what closes the video block."""
        raise NotImplementedError

    def pixel_inputs(self, pixels: Any) -> dict:  # pragma: no cover - protocol
        """``generate`` keyword arguments handing it preprocessed frames (B, T, 3, H, W)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<front end {self.name}: {', '.join(self.model_types)}>"


PREPROCESSOR_FILES = ("video_preprocessor_config.json", "preprocessor_config.json", "processor_config.json")


def preprocessor_file(source: str, local_files_only: bool = False) -> str | None:
    """Path of a checkpoint's frame-preprocessing config (the video processor's first), or None when it has
    none: a local directory is searched, a hub id goes through the HF cache."""
    import os

    if os.path.isdir(source):
        for name in PREPROCESSOR_FILES:
            if os.path.isfile(os.path.join(source, name)):
                return os.path.join(source, name)
        return None
    from transformers.utils import cached_file

    for name in PREPROCESSOR_FILES:
        try:
            path = cached_file(source, name, _raise_exceptions_for_missing_entries=False,
                               local_files_only=local_files_only)
        except OSError:
            path = None
        if path:
            return path
    return None


def register_frontend(cls: type) -> type:
    """Class decorator: register (an instance of) a front end under each of its ``model_types``.
    A key that is already taken by another front end, or a front end without model types, is an error."""
    fe = cls()
    if not fe.name or not fe.model_types:
        raise ValueError(f"front end {cls.__name__} needs a name and model_types")
    for key in fe.model_types:
        other = _REGISTRY.get(key)
        if other is not None and type(other) is not cls:
            raise ValueError(f"model_type {key!r} already has a front end ({type(other).__name__}, "
                             f"{other.name!r}); cannot register {cls.__name__}")
    for key in fe.model_types:
        _REGISTRY[key] = fe
    return cls


def registered_frontends() -> dict:
    """model_type -> front end."""
    return dict(_REGISTRY)


def _supported() -> str:
    return "; ".join(f"{k}: {fe.description}" for k, fe in sorted(_REGISTRY.items()))


def get_frontend(model_type: str) -> FrontEnd:
    """The front end of a config.json ``model_type``; ValueError naming the supported ones."""
    fe = _REGISTRY.get(model_type)
    if fe is None:
        raise ValueError(f"no front end for model_type {model_type!r}; supported: {_supported()}")
    return fe


def frontend_for(config: Any) -> FrontEnd:
    """The front end of a transformers config (or a model, or a ``model_type`` string)."""
    if isinstance(config, str):
        return get_frontend(config)
    config = getattr(config, "config", config) if not hasattr(config, "model_type") else config
    return get_frontend(getattr(config, "model_type", None))


def tokens_per_frame(config: Any) -> int:
    """Visual tokens per frame of a config, from its family's front end."""
    return frontend_for(config).tokens_per_frame(config)
