"""Full-size SD UNet architectures written in code (the hub ``unet/config.json`` values),
for benchmarks and tests that need the real layer shapes but no weights."""
from __future__ import annotations

_SD_BLOCKS = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    norm_num_groups=32,
    flip_sin_to_cos=True,
    freq_shift=0,
)

UNET_CONFIGS = {
    # CompVis/stable-diffusion-v1-4 and v1-5: 8 heads everywhere, CLIP ViT-L/14 context (768)
    "sd14": dict(_SD_BLOCKS, attention_head_dim=8, cross_attention_dim=768),
    # stabilityai/stable-diffusion-2-base and 2-1-base: 64-channel heads, OpenCLIP ViT-H context (1024)
    "sd2_base": dict(_SD_BLOCKS, attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024, use_linear_projection=True),
}


def build_random_unet(arch: str, seed: int = 0):
    """A full-size UNet with random, seeded weights, built in seconds.

    Built on the meta device and filled directly: weights ~ U(±1/√fan_in) (the
    distribution of PyTorch's default Linear/Conv init), norm scales 1, biases U(±0.01).
    The default constructor's per-layer init takes 4x longer for the same kind of numbers.
    """
    import math

    import torch
    from diffusers import UNet2DConditionModel

    if arch not in UNET_CONFIGS:
        raise ValueError(f"unknown UNet architecture {arch!r}. Valid choices: {', '.join(UNET_CONFIGS)}.")
    with torch.device("meta"):
        unet = UNet2DConditionModel(**UNET_CONFIGS[arch])
    unet.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if param.ndim >= 2:
                bound = 1.0 / math.sqrt(param[0].numel())
                param.uniform_(-bound, bound, generator=generator)
            elif name.endswith("weight"):
                param.fill_(1.0)
            else:
                param.uniform_(-0.01, 0.01, generator=generator)
    return unet.eval().requires_grad_(False)
