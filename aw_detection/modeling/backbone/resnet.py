"""ResNet / ResNet-FPN backbones whose blocks carry AW, AA, SE or CBAM attention.

The builders follow Detectron2's ``build_resnet_backbone`` and swap only the block class of
the stages that get attention. Block classes subclass Detectron2's, so the static parameters
keep Detectron2's names and ImageNet ``R-50.pkl`` / ``R-101.pkl`` load unchanged.
"""
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool
from detectron2.modeling.backbone.resnet import (
    BasicBlock,
    BasicStem,
    BottleneckBlock,
    DeformBottleneckBlock,
    ResNet,
)

from ...errors import ConfigError
from ...layers import AAConv2d, AWConv2d, aa_channels, create_act_attention

__all__ = [
    "AttentionBasicBlock",
    "AttentionBottleneckBlock",
    "build_aw_resnet_backbone",
    "build_aw_resnet_fpn_backbone",
]

STAGE_NAMES = ("res2", "res3", "res4", "res5")


def to_aw_conv(conv, reduction, attention_groups):
    """An AWConv2d computing what the Detectron2 ``Conv2d`` ``conv`` computes (same weight)."""
    aw = AWConv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
        conv.dilation, conv.groups, conv.bias is not None, reduction=reduction,
        attention_groups=attention_groups, norm=conv.norm, activation=conv.activation,
    )
    aw.weight.data.copy_(conv.weight.data)
    if conv.bias is not None:
        aw.bias.data.copy_(conv.bias.data)
    return aw


def to_aa_conv(conv, heads, kappa, nu, max_size, aw=None):
    """An AAConv2d replacing ``conv``; its conv branch starts from ``conv``'s first filters."""
    if conv.groups != 1:
        raise ConfigError("MODEL.AA: grouped 3x3 convs (RESNETS.NUM_GROUPS > 1) are not supported")
    key_channels, value_channels = aa_channels(conv.out_channels, heads, kappa, nu)
    aa = AAConv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, heads=heads,
        key_channels=key_channels, value_channels=value_channels, max_size=max_size,
        aw=aw or False, dilation=conv.dilation, norm=conv.norm, activation=conv.activation,
    )
    aa.conv.weight.data.copy_(conv.weight.data[: aa.conv.out_channels])
    return aa


class _AttentionMixin:
    def _add_attention(self, conv_names, out_channels, aw, aa, act_attention, act_reduction):
        """aw: None or AWConv2d kwargs; aa: None or to_aa_conv kwargs (its conv branch is AW
        when aw is set too). Both apply to the 3x3 convs ``conv_names``."""
        for name in conv_names:
            conv = getattr(self, name)
            if aa is not None:
                setattr(self, name, to_aa_conv(conv, aw=aw, **aa))
            elif aw is not None:
                setattr(self, name, to_aw_conv(conv, **aw))
        self.act_attention = create_act_attention(act_attention, out_channels, act_reduction)

    def _residual(self, out, x):
        if self.act_attention is not None:
            out = self.act_attention(out)
        out += self.shortcut(x) if self.shortcut is not None else x
        return F.relu_(out)


class AttentionBottleneckBlock(_AttentionMixin, BottleneckBlock):
    """Detectron2's BottleneckBlock; conv2 (the 3x3) may be AW and/or AA, the branch output
    SE/CBAM."""

    def __init__(self, in_channels, out_channels, *, aw=None, aa=None, act_attention="",
                 act_reduction=16, **kwargs):
        super().__init__(in_channels, out_channels, **kwargs)
        self._add_attention(("conv2",), out_channels, aw, aa, act_attention, act_reduction)

    def forward(self, x):
        out = F.relu_(self.conv1(x))
        out = F.relu_(self.conv2(out))
        return self._residual(self.conv3(out), x)


class AttentionBasicBlock(_AttentionMixin, BasicBlock):
    """Detectron2's BasicBlock (R-18/34); both 3x3 convs may be AW and/or AA, the output
    SE/CBAM."""

    def __init__(self, in_channels, out_channels, *, aw=None, aa=None, act_attention="",
                 act_reduction=16, **kwargs):
        super().__init__(in_channels, out_channels, **kwargs)
        self._add_attention(("conv1", "conv2"), out_channels, aw, aa, act_attention,
                            act_reduction)

    def forward(self, x):
        out = F.relu_(self.conv1(x))
        return self._residual(self.conv2(out), x)


def _stage_attention(cfg, stage):
    """Block kwargs for the attention of one stage ({} when it has none)."""
    kwargs = {}
    if cfg.MODEL.AW.ENABLED and stage in cfg.MODEL.AW.STAGES:
        kwargs["aw"] = dict(reduction=cfg.MODEL.AW.REDUCTION,
                            attention_groups=cfg.MODEL.AW.ATTENTION_GROUPS)
    if cfg.MODEL.AA.ENABLED and stage in cfg.MODEL.AA.STAGES:
        kwargs["aa"] = dict(heads=cfg.MODEL.AA.HEADS, kappa=cfg.MODEL.AA.KAPPA,
                            nu=cfg.MODEL.AA.NU, max_size=cfg.MODEL.AA.MAX_SIZE)
    act = cfg.MODEL.ACT_ATTENTION
    if act.TYPE and stage in act.STAGES:
        kwargs["act_attention"] = act.TYPE
        kwargs["act_reduction"] = act.REDUCTION
    return kwargs


def _check_stages(cfg):
    for key, enabled, stages in (
        ("MODEL.AW.STAGES", cfg.MODEL.AW.ENABLED, cfg.MODEL.AW.STAGES),
        ("MODEL.AA.STAGES", cfg.MODEL.AA.ENABLED, cfg.MODEL.AA.STAGES),
        ("MODEL.ACT_ATTENTION.STAGES", bool(cfg.MODEL.ACT_ATTENTION.TYPE),
         cfg.MODEL.ACT_ATTENTION.STAGES),
    ):
        if not enabled:
            continue
        for stage in stages:
            if stage not in STAGE_NAMES:
                raise ConfigError(f"{key}: unknown stage {stage!r}; use some of {STAGE_NAMES}")
            if STAGE_NAMES.index(stage) + 2 <= cfg.MODEL.BACKBONE.FREEZE_AT:
                raise ConfigError(
                    f"{key} has {stage}, but MODEL.BACKBONE.FREEZE_AT="
                    f"{cfg.MODEL.BACKBONE.FREEZE_AT} freezes it, so its attention could not "
                    f"train. Remove {stage} or lower FREEZE_AT."
                )
    try:
        create_act_attention(cfg.MODEL.ACT_ATTENTION.TYPE, 8)  # validates the name early
    except ValueError as e:
        raise ConfigError(str(e)) from e


@BACKBONE_REGISTRY.register()
def build_aw_resnet_backbone(cfg, input_shape):
    """Detectron2's ResNet with attention blocks in the configured stages."""
    _check_stages(cfg)
    res = cfg.MODEL.RESNETS
    depth = res.DEPTH
    stem = BasicStem(in_channels=input_shape.channels, out_channels=res.STEM_OUT_CHANNELS,
                     norm=res.NORM)
    num_blocks_per_stage = {
        18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3],
        152: [3, 8, 36, 3],
    }[depth]
    basic = depth in (18, 34)
    if basic and (res.RES2_OUT_CHANNELS != 64 or res.RES5_DILATION != 1 or res.NUM_GROUPS != 1
                  or any(res.DEFORM_ON_PER_STAGE)):
        raise ConfigError("R18/R34 need RESNETS.RES2_OUT_CHANNELS=64, RES5_DILATION=1, "
                         "NUM_GROUPS=1 and no DEFORM_ON_PER_STAGE")
    if res.RES5_DILATION not in (1, 2):
        raise ConfigError(f"MODEL.RESNETS.RES5_DILATION must be 1 or 2, got {res.RES5_DILATION}")

    in_channels, out_channels = res.STEM_OUT_CHANNELS, res.RES2_OUT_CHANNELS
    bottleneck_channels = res.NUM_GROUPS * res.WIDTH_PER_GROUP
    stages = []
    for idx, stage in enumerate(STAGE_NAMES):
        dilation = res.RES5_DILATION if stage == "res5" else 1
        first_stride = 1 if idx == 0 or (stage == "res5" and dilation == 2) else 2
        kwargs = {
            "num_blocks": num_blocks_per_stage[idx],
            "stride_per_block": [first_stride] + [1] * (num_blocks_per_stage[idx] - 1),
            "in_channels": in_channels,
            "out_channels": out_channels,
            "norm": res.NORM,
        }
        if not basic:
            kwargs.update(bottleneck_channels=bottleneck_channels,
                          stride_in_1x1=res.STRIDE_IN_1X1, dilation=dilation,
                          num_groups=res.NUM_GROUPS)
        attention = _stage_attention(cfg, stage)
        if attention and res.DEFORM_ON_PER_STAGE[idx]:
            raise ConfigError(f"{stage}: deformable conv and attention cannot share a stage")
        if attention:
            kwargs["block_class"] = AttentionBasicBlock if basic else AttentionBottleneckBlock
            kwargs.update(attention)
        elif basic:
            kwargs["block_class"] = BasicBlock
        elif res.DEFORM_ON_PER_STAGE[idx]:
            kwargs.update(block_class=DeformBottleneckBlock,
                          deform_modulated=res.DEFORM_MODULATED,
                          deform_num_groups=res.DEFORM_NUM_GROUPS)
        else:
            kwargs["block_class"] = BottleneckBlock
        try:
            stages.append(ResNet.make_stage(**kwargs))
        except ConfigError:
            raise
        except ValueError as e:  # a layer refusing its arguments, e.g. ATTENTION_GROUPS
            raise ConfigError(f"{stage}: {e}; check MODEL.AW / MODEL.AA") from e
        in_channels = out_channels
        out_channels *= 2
        bottleneck_channels *= 2
    return ResNet(stem, stages, out_features=res.OUT_FEATURES, freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT)


@BACKBONE_REGISTRY.register()
def build_aw_resnet_fpn_backbone(cfg, input_shape: ShapeSpec):
    """Detectron2's FPN over :func:`build_aw_resnet_backbone`."""
    bottom_up = build_aw_resnet_backbone(cfg, input_shape)
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
