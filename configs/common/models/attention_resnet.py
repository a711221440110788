# The attention ResNet (LazyConfig): aw_detection's model factory with Detectron2's ResNet
# options and the attention settings. aw / aa / act_attention hold the keys of MODEL.AW,
# MODEL.AA and MODEL.ACT_ATTENTION in lower case, filled with add_aw_config's defaults, e.g.
#   model.backbone.bottom_up.aw.enabled = True
#   model.backbone.bottom_up.aw.attention_groups = 8
# With every attention off it is Detectron2's ResNet (as L(ResNet)(...) in its common/models).
from detectron2.config import LazyCall as L

from aw_detection.modeling import attention_resnet
from aw_detection.modeling.backbone import attention_defaults

bottom_up = L(attention_resnet)(
    depth=50,
    stride_in_1x1=True,
    norm="FrozenBN",
    out_features=["res2", "res3", "res4", "res5"],
    freeze_at=0,
    **attention_defaults(),
)
