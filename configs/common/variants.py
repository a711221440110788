# The attention variants of the YAML zoo (the settings of its _<variant>.yaml files) for the
# LazyConfig detectors: `variant=NAME` on tools/lazyconfig_train_net.py's command line merges
# variants[NAME] into model.backbone.bottom_up (aw_detection.lazy_config.load_lazy_config).
variants = dict(
    aw=dict(aw=dict(enabled=True)),  # AW-full: one attention row per output channel
    aw_lite=dict(aw=dict(enabled=True, attention_groups=8)),  # 8 rows, each for C_out/8 channels
    se=dict(act_attention=dict(type="SE")),
    cbam=dict(act_attention=dict(type="CBAM")),
    se_aw=dict(aw=dict(enabled=True), act_attention=dict(type="SE")),
    cbam_aw=dict(aw=dict(enabled=True), act_attention=dict(type="CBAM")),
    aa=dict(aa=dict(enabled=True)),  # res5 by default
    aa_aw=dict(aa=dict(enabled=True), aw=dict(enabled=True)),  # in res5 the AA conv branch is AW
)
