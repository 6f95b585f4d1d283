"""Entrypoints of well-known model-serving images, so `prewarm inject` can wrap a container that
sets only `args` (the image's ENTRYPOINT is not visible in a manifest).

Each entry is what works on every published version of the image, not only the newest: where the
ENTRYPOINT changed across versions, the entry names a program present in all of them (see
docs/semi-warm.md for the sources and the reasons).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence


@dataclasses.dataclass(frozen=True, slots=True)
class ServingImage:
    """One known image: the command that goes before the container's args."""

    name: str
    repository: str  # the path without a registry host: `vllm/vllm-openai`
    entrypoint: tuple[str, ...]  # () when the image has no entrypoint of its own: the args are the command
    positional_entrypoint: tuple[str, ...] | None = None  # when the first arg is not an option


SERVING_IMAGES: tuple[ServingImage, ...] = (
    # ENTRYPOINT was `python3 -m vllm.entrypoints.openai.api_server`, later `vllm serve`. The module
    # still runs in every version and takes `--model X`; only `vllm serve` takes the model as the
    # first, positional arg, so args that start with one must be written for an image that has it.
    ServingImage(
        name="vLLM OpenAI server",
        repository="vllm/vllm-openai",
        entrypoint=("python3", "-m", "vllm.entrypoints.openai.api_server"),
        positional_entrypoint=("vllm", "serve"),
    ),
    # No ENTRYPOINT of its own (the inherited NVIDIA script runs its args): args hold the command.
    ServingImage(name="SGLang", repository="lmsysorg/sglang", entrypoint=()),
    # ENTRYPOINT was `text-generation-launcher`, later `/tgi-entrypoint.sh`, which refreshes the
    # ld cache and execs `text-generation-launcher` with the same args.
    ServingImage(
        name="Hugging Face TGI",
        repository="huggingface/text-generation-inference",
        entrypoint=("text-generation-launcher",),
    ),
    ServingImage(name="NVIDIA Triton Inference Server", repository="nvidia/tritonserver", entrypoint=()),
    ServingImage(
        name="KServe Hugging Face runtime",
        repository="kserve/huggingfaceserver",
        entrypoint=("python3", "-m", "huggingfaceserver"),
    ),
    ServingImage(
        name="KServe scikit-learn runtime",
        repository="kserve/sklearnserver",
        entrypoint=("python", "-m", "sklearnserver"),
    ),
    ServingImage(
        name="KServe XGBoost runtime", repository="kserve/xgbserver", entrypoint=("python", "-m", "xgbserver")
    ),
    ServingImage(
        name="KServe LightGBM runtime", repository="kserve/lgbserver", entrypoint=("python", "-m", "lgbserver")
    ),
    ServingImage(
        name="KServe PMML runtime", repository="kserve/pmmlserver", entrypoint=("python3", "-m", "pmmlserver")
    ),
    ServingImage(
        name="KServe PaddlePaddle runtime",
        repository="kserve/paddleserver",
        entrypoint=("python", "-m", "paddleserver"),
    ),
)


def repository_path(image: str) -> str:
    """`nvcr.io/nvidia/tritonserver:24.08-py3` -> `nvidia/tritonserver`: the image's path without
    the registry host, tag or digest (Docker Hub's `library/` kept as written)."""
    name = image.strip().split("@", 1)[0]
    head, slash, last = name.rpartition("/")
    name = f"{head}{slash}{last.split(':', 1)[0]}"
    parts = name.split("/")
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        parts = parts[1:]
    return "/".join(parts)


def find_serving_image(image: str) -> ServingImage | None:
    """The table's entry for `image`, also behind a mirror that keeps the path
    (`registry.example.com/mirror/vllm/vllm-openai:v0.11.0`); None when it is not known."""
    path = repository_path(image)
    for known in SERVING_IMAGES:
        if path == known.repository or path.endswith("/" + known.repository):
            return known
    return None


def entrypoint_for(known: ServingImage, args: Sequence[str]) -> tuple[str, ...]:
    """What to run before `args` for this image."""
    if known.positional_entrypoint is not None and args and not str(args[0]).startswith("-"):
        return known.positional_entrypoint
    return known.entrypoint
