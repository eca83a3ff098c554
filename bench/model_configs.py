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

# --------------------------------------------------------------------------- the 2026 families
# Denoisers: Qwen-Image's and Z-Image's are diffusers 0.42's class defaults, which are the released
# transformer/config.json values (QwenImageTransformer2DModel: Qwen/Qwen-Image; ZImageTransformer2DModel:
# Tongyi-MAI/Z-Image[-Turbo]); FLUX.2's are diffusers' scripts/convert_flux2_to_diffusers.py
# (get_flux2_transformer_config: flux2-dev, klein-4b, klein-9b).
QWEN_IMAGE = dict(
    patch_size=2, in_channels=64, out_channels=16, num_layers=60, attention_head_dim=128, num_attention_heads=24,
    joint_attention_dim=3584, guidance_embeds=False, axes_dims_rope=(16, 56, 56),
)  # fmt: skip
FLUX2_DEV = dict(
    patch_size=1, in_channels=128, num_layers=8, num_single_layers=48, attention_head_dim=128, num_attention_heads=48,
    joint_attention_dim=15360, timestep_guidance_channels=256, mlp_ratio=3.0, axes_dims_rope=(32, 32, 32, 32),
    rope_theta=2000, eps=1e-6, guidance_embeds=True,
)  # fmt: skip
FLUX2_KLEIN_4B = dict(FLUX2_DEV, num_layers=5, num_single_layers=20, num_attention_heads=24, joint_attention_dim=7680,
                      guidance_embeds=False)  # fmt: skip
FLUX2_KLEIN_9B = dict(FLUX2_DEV, num_layers=8, num_single_layers=24, num_attention_heads=32, joint_attention_dim=12288,
                      guidance_embeds=False)  # fmt: skip
Z_IMAGE = dict(
    all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=3840, n_layers=30, n_refiner_layers=2, n_heads=30,
    n_kv_heads=30, norm_eps=1e-5, qk_norm=True, cap_feat_dim=2560, rope_theta=256.0, t_scale=1000.0,
    axes_dims=(32, 48, 48), axes_lens=(1024, 512, 512),
)  # fmt: skip
# Text encoders, as transformers' config classes take them; values of the released config.json files:
# Qwen/Qwen2.5-VL-7B-Instruct (Qwen-Image's text_encoder), mistralai/Mistral-Small-3.1-24B-Instruct-2503 (FLUX.2
# [dev]'s: 23.57B text + 0.44B vision parameters), Qwen/Qwen3-4B (Z-Image, FLUX.2 [klein] 4B) and Qwen/Qwen3-8B
# ([klein] 9B; the transformer's joint_attention_dim is three of its hidden states stacked: 3 x 4096 = 12288).
QWEN25_VL_7B = dict(
    text_config=dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                     num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=128000,
                     rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]}, tie_word_embeddings=False),
    vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                       patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                       fullatt_block_indexes=[7, 15, 23, 31]),
    vocab_size=152064, tie_word_embeddings=False,
)  # fmt: skip
MISTRAL_SMALL_31 = dict(
    text_config=dict(model_type="mistral", vocab_size=131072, hidden_size=5120, intermediate_size=32768,
                     num_hidden_layers=40, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                     max_position_embeddings=131072, sliding_window=None, tie_word_embeddings=False),
    vision_config=dict(model_type="pixtral", hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                       num_attention_heads=16, head_dim=64, image_size=1540, patch_size=14),
    spatial_merge_size=2, multimodal_projector_bias=False, projector_hidden_act="gelu", tie_word_embeddings=False,
)  # fmt: skip
QWEN3_4B = dict(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                num_attention_heads=32, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True)  # fmt: skip
QWEN3_8B = dict(QWEN3_4B, hidden_size=4096, intermediate_size=12288, tie_word_embeddings=False)
# VAEs: diffusers' class defaults are the released ones (AutoencoderKLQwenImage: Qwen/Qwen-Image/vae;
# AutoencoderKLFlux2: the FLUX.2 VAE, 32 channels); Z-Image uses FLUX.1's 16-channel AutoencoderKL.
QWEN_VAE: dict = {}
FLUX2_VAE: dict = {}

# --quick stand-ins of the above: one or two blocks, a few channels, the same classes and layout.
QWEN_IMAGE_QUICK = dict(QWEN_IMAGE, num_layers=2, attention_head_dim=16, num_attention_heads=2,
                        joint_attention_dim=TEXT_QUICK, axes_dims_rope=(4, 6, 6))  # fmt: skip
FLUX2_DEV_QUICK = dict(FLUX2_DEV, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                       joint_attention_dim=3 * TEXT_QUICK, axes_dims_rope=(4, 4, 4, 4))  # fmt: skip
FLUX2_KLEIN_4B_QUICK = dict(FLUX2_DEV_QUICK, guidance_embeds=False)
Z_IMAGE_QUICK = dict(Z_IMAGE, dim=32, n_layers=2, n_refiner_layers=1, n_heads=2, n_kv_heads=2, cap_feat_dim=TEXT_QUICK,
                     axes_dims=(8, 4, 4), axes_lens=(1024, 64, 64))  # fmt: skip
QWEN25_VL_QUICK = dict(
    QWEN25_VL_7B, vocab_size=1000,
    text_config=dict(QWEN25_VL_7B["text_config"], vocab_size=1000, hidden_size=TEXT_QUICK, intermediate_size=64,
                     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                     rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}),
    vision_config=dict(QWEN25_VL_7B["vision_config"], depth=1, hidden_size=TEXT_QUICK, intermediate_size=64,
                       num_heads=2, out_hidden_size=TEXT_QUICK, fullatt_block_indexes=[0]),
)  # fmt: skip
MISTRAL_QUICK = dict(
    MISTRAL_SMALL_31,
    text_config=dict(MISTRAL_SMALL_31["text_config"], vocab_size=1000, hidden_size=TEXT_QUICK, intermediate_size=64,
                     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=16),
    vision_config=dict(MISTRAL_SMALL_31["vision_config"], hidden_size=TEXT_QUICK, intermediate_size=64,
                       num_hidden_layers=1, num_attention_heads=2, head_dim=16),
)  # fmt: skip
QWEN3_QUICK = dict(QWEN3_4B, vocab_size=1000, hidden_size=TEXT_QUICK, intermediate_size=64, num_hidden_layers=1,
                   num_attention_heads=2, num_key_value_heads=1, head_dim=16)  # fmt: skip
QWEN_VAE_QUICK = dict(base_dim=8, dim_mult=[1, 2, 4, 4], num_res_blocks=1)
FLUX2_VAE_QUICK = dict(block_out_channels=(32, 32, 32, 32), layers_per_block=1, norm_num_groups=8)
