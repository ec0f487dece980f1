"""The SgMg model (Miao et al., ICCV 2023), one file per paper component.

Axis legend used in shape comments throughout ``sgmg.model``:

    B  videos in the batch
    T  frames per video
    Q  queries per frame
    K  queries per video that go through the multi-granularity refiner
    L  feature levels of the deformable transformer (strides 8, 16, 32, 64)
    N  decoder layers
    S  text tokens
    C  channels
    H W  spatial size (of the padded input unless said otherwise; h w for a feature level)
    P  sampling points per head and level (deformable attention)
"""
