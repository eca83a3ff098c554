"""The published architecture configs the benches build (random weights, or on the meta device).

Denoisers as diffusers' classes take them (``UNet2DConditionModel``, ``FluxTransformer2DModel``,
``SD3Transformer2DModel``), text encoders as transformers' config classes do (``CLIPTextConfig``,
``T5Config``); values are those of the models' ``config.json`` files on the hub.
"""

SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, attention_head_dim=8, cross_attention_dim=768,
)  # fmt: skip
SD15_UNET_MID = dict(SD15_UNET, block_out_channels=(128, 256, 512, 512))  # SD1.5's layout at 0.4x width: 142 M
SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True,
    addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
)  # fmt: skip
FLUX_DEV = dict(
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
    num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)  # fmt: skip
SD35_LARGE = dict(
    sample_size=128, patch_size=2, in_channels=16, num_layers=38, attention_head_dim=64, num_attention_heads=38,
    joint_attention_dim=4096, caption_projection_dim=2432, pooled_projection_dim=2048, out_channels=16,
    pos_embed_max_size=192, qk_norm="rms_norm",
)  # fmt: skip
CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)  # fmt: skip
CLIP_G = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
              max_position_embeddings=77, hidden_act="gelu", projection_dim=1280)  # fmt: skip
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
              relative_attention_num_buckets=32, feed_forward_proj="gated-gelu")  # fmt: skip
SD_VAE = dict(in_channels=3, out_channels=3, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
              down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)  # fmt: skip

# ``--quick`` stand-ins: each is its published config with a few overrides (same keys, same classes, same
# layout; one or two layers and a few channels), so a bench's quick mode builds and runs them through the
# code its full mode uses and breaks where that breaks, in seconds on a CPU.  Their widths fit together as
# the published ones do: text states of 32 per CLIP encoder (64 for SDXL's two), pooled 32, T5 states of 32;
# group norms of 8 groups keep a few channels per group (a 32-channel map at 1 x 1 px still normalises).
TEXT_QUICK = 32
CLIP_L_QUICK = dict(CLIP_L, hidden_size=TEXT_QUICK, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                    projection_dim=TEXT_QUICK)  # fmt: skip
CLIP_G_QUICK = dict(CLIP_G, hidden_size=TEXT_QUICK, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                    projection_dim=TEXT_QUICK)  # fmt: skip
T5_XXL_QUICK = dict(T5_XXL, d_model=TEXT_QUICK, d_kv=8, d_ff=64, num_layers=1, num_heads=4)
SD15_UNET_QUICK = dict(SD15_UNET, block_out_channels=(32, 32, 64, 64), layers_per_block=1, attention_head_dim=2,
                       cross_attention_dim=TEXT_QUICK, norm_num_groups=8)  # fmt: skip
SDXL_UNET_QUICK = dict(SDXL_UNET, block_out_channels=(32, 64, 64), layers_per_block=1, transformer_layers_per_block=1,
                       attention_head_dim=(2, 4, 4), cross_attention_dim=2 * TEXT_QUICK, addition_time_embed_dim=8,
                       projection_class_embeddings_input_dim=TEXT_QUICK + 6 * 8, norm_num_groups=8)  # fmt: skip
FLUX_DEV_QUICK = dict(FLUX_DEV, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                      joint_attention_dim=TEXT_QUICK, pooled_projection_dim=TEXT_QUICK, axes_dims_rope=(4, 6, 6))  # fmt: skip
SD35_LARGE_QUICK = dict(SD35_LARGE, num_layers=2, attention_head_dim=8, num_attention_heads=4,
                        joint_attention_dim=TEXT_QUICK, caption_projection_dim=32, pooled_projection_dim=2 * TEXT_QUICK)  # fmt: skip
SD_VAE_QUICK = dict(SD_VAE, block_out_channels=(32, 32, 32, 32), layers_per_block=1, norm_num_groups=8)
