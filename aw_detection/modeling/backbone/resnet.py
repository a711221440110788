"""Detectron2's ResNet with attention blocks in chosen stages, for YAML and LazyConfig alike.

:func:`attention_resnet` is the model factory: explicit arguments (Detectron2's ResNet options
plus the attention settings ``aw``, ``aa``, ``act_attention``), usable as
``L(attention_resnet)(...)`` in a LazyConfig. The registered YAML builder
:func:`build_aw_resnet_backbone` only translates ``cfg`` into those arguments, so both config
systems build the same network through the same code. It reuses Detectron2's ``ResNet``,
``BasicStem`` and ``ResNet.make_stage`` and swaps only the block class of the stages that get
attention.
"""
import copy
import functools
from collections.abc import Mapping, Sequence

from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.resnet import (
    BasicBlock,
    BasicStem,
    BottleneckBlock,
    DeformBottleneckBlock,
    ResNet,
)

from ...config import add_aw_config
from ...errors import ConfigError
from ...layers import create_act_attention
from ...layers.aw_conv import KERNELS
from .blocks import AttentionBasicBlock, AttentionBottleneckBlock

__all__ = ["attention_defaults", "attention_resnet", "build_aw_resnet_backbone", "resnet_arguments",
           "stage_attention"]

STAGE_NAMES = ("res2", "res3", "res4", "res5")
BLOCKS_PER_STAGE = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3],
                    152: [3, 8, 36, 3]}
# attention_resnet argument -> the config node holding the same settings (upper-case keys).
ATTENTION_SECTIONS = {"aw": "AW", "aa": "AA", "act_attention": "ACT_ATTENTION"}
# The keys of those nodes that shape the network; others (e.g. optimiser factors) are not the
# backbone's, and a LazyConfig that set them here would see them ignored.
BACKBONE_KEYS = {"aw": ("enabled", "stages", "reduction", "attention_groups", "kernel"),
                 "aa": ("enabled", "stages", "heads", "kappa", "nu", "max_size"),
                 "act_attention": ("type", "stages", "reduction")}


def _plain(value):
    """Config values (CfgNode, OmegaConf containers, tuples) as plain dicts / lists."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_plain(v) for v in value]
    return value


def _section(cfg, arg):
    """The backbone settings of MODEL.AW / MODEL.AA / MODEL.ACT_ATTENTION, lower-case keys; a
    config without that node (one that did not go through ``add_aw_config``, e.g. a Detectron2
    model-zoo config with only the backbone name changed) asks for none of that attention."""
    node = cfg.MODEL.get(ATTENTION_SECTIONS[arg])
    if node is None:
        return attention_defaults()[arg]
    return {key: _plain(node[key.upper()]) for key in BACKBONE_KEYS[arg]}


@functools.lru_cache(maxsize=None)
def _defaults():
    cfg = add_aw_config(get_cfg())
    return {arg: _section(cfg, arg) for arg in ATTENTION_SECTIONS}


def attention_defaults():
    """``{"aw": {...}, "aa": {...}, "act_attention": {...}}``: the defaults of the backbone
    settings of MODEL.AW, MODEL.AA and MODEL.ACT_ATTENTION from ``add_aw_config`` (the one place
    they are born), keys in lower case, as :func:`attention_resnet` takes them."""
    return copy.deepcopy(_defaults())


def _settings(arg, given):
    defaults = attention_defaults()[arg]
    given = _plain(given or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ConfigError(f"{arg}: unknown setting(s) {unknown}; the backbone's settings are "
                          f"{sorted(defaults)} (those of MODEL.{ATTENTION_SECTIONS[arg]}, in "
                          "lower case)")
    return {**defaults, **given}


def _check_stages(aw, aa, act_attention, freeze_at):
    for key, enabled, stages in (
        ("MODEL.AW.STAGES", aw["enabled"], aw["stages"]),
        ("MODEL.AA.STAGES", aa["enabled"], aa["stages"]),
        ("MODEL.ACT_ATTENTION.STAGES", bool(act_attention["type"]), act_attention["stages"]),
    ):
        if not enabled:
            continue
        for stage in stages:
            if stage not in STAGE_NAMES:
                raise ConfigError(f"{key}: unknown stage {stage!r}; use some of {STAGE_NAMES}")
            if STAGE_NAMES.index(stage) + 2 <= freeze_at:
                raise ConfigError(
                    f"{key} has {stage}, but MODEL.BACKBONE.FREEZE_AT={freeze_at} freezes it, "
                    f"so its attention could not train. Remove {stage} or lower FREEZE_AT."
                )
    if aw["kernel"] not in KERNELS:
        raise ConfigError(f"MODEL.AW.KERNEL: unknown kernel {aw['kernel']!r}; use one of {KERNELS}")
    try:
        create_act_attention(act_attention["type"], 8)  # validates the name early
    except ValueError as e:
        raise ConfigError(str(e)) from e


def _stage_attention(aw, aa, act_attention, stage):
    """Block kwargs for the attention of one stage ({} when it has none)."""
    kwargs = {}
    if aw["enabled"] and stage in aw["stages"]:
        kwargs["aw"] = dict(reduction=aw["reduction"], attention_groups=aw["attention_groups"],
                            kernel=aw["kernel"])
    if aa["enabled"] and stage in aa["stages"]:
        kwargs["aa"] = dict(heads=aa["heads"], kappa=aa["kappa"], nu=aa["nu"],
                            max_size=aa["max_size"])
    if act_attention["type"] and stage in act_attention["stages"]:
        kwargs["act_attention"] = act_attention["type"]
        kwargs["act_reduction"] = act_attention["reduction"]
    return kwargs


def stage_attention(cfg, stage):
    """Block kwargs for the attention a YAML config asks for in ``stage`` ({} for none),
    the settings checked."""
    aw, aa, act = (_settings(arg, _section(cfg, arg)) for arg in ATTENTION_SECTIONS)
    _check_stages(aw, aa, act, cfg.MODEL.BACKBONE.FREEZE_AT)
    return _stage_attention(aw, aa, act, stage)


# The keys that name a stage for each kind of attention (for refusals).
STAGE_KEYS = {"aw": "MODEL.AW.STAGES", "aa": "MODEL.AA.STAGES",
              "act_attention": "MODEL.ACT_ATTENTION.STAGES"}


# Detectron2 meta-architectures that build no ROI heads (whatever MODEL.ROI_HEADS says).
NO_ROI_HEADS = ("ProposalNetwork", "RetinaNet", "SemanticSegmentor")


def _check_res5_is_built(cfg, out_features):
    """A C4 model's res5 runs in its ROI head: attention asked for there needs ours."""
    in_head = (cfg.MODEL.ROI_HEADS.NAME == "AttentionRes5ROIHeads"
               and cfg.MODEL.META_ARCHITECTURE not in NO_ROI_HEADS)
    if "res5" in out_features or in_head:
        return
    asked = stage_attention(cfg, "res5")
    if asked:
        keys = sorted({STAGE_KEYS["act_attention" if k.startswith("act") else k] for k in asked})
        head = cfg.MODEL.ROI_HEADS.NAME
        fix = ("set MODEL.ROI_HEADS.NAME AttentionRes5ROIHeads" if head == "Res5ROIHeads"
               and cfg.MODEL.META_ARCHITECTURE not in NO_ROI_HEADS else "remove res5 from it")
        raise ConfigError(f"{', '.join(keys)} has res5, which this backbone does not build "
                          f"(MODEL.RESNETS.OUT_FEATURES={list(out_features)}, ROI head {head}): {fix}")


def attention_resnet(*, depth=50, in_channels=3, stem_out_channels=64, res2_out_channels=256,
                     num_groups=1, width_per_group=64, stride_in_1x1=True, res5_dilation=1,
                     norm="FrozenBN", deform_on_per_stage=(False, False, False, False),
                     deform_modulated=False, deform_num_groups=1,
                     out_features=("res2", "res3", "res4", "res5"), freeze_at=0,
                     aw=None, aa=None, act_attention=None):
    """Detectron2's ResNet with attention blocks in the configured stages.

    The arguments are Detectron2's ``MODEL.RESNETS`` options (lower case) plus ``freeze_at``;
    ``aw``, ``aa`` and ``act_attention`` are dicts with the keys of ``MODEL.AW``, ``MODEL.AA``
    and ``MODEL.ACT_ATTENTION`` that shape the network (``BACKBONE_KEYS``), in lower case (e.g.
    ``aw=dict(enabled=True, attention_groups=8)``); keys left out take ``add_aw_config``'s
    defaults. With every
    attention off this is exactly Detectron2's ``build_resnet_backbone``.
    """
    aw, aa, act_attention = (_settings("aw", aw), _settings("aa", aa),
                             _settings("act_attention", act_attention))
    _check_stages(aw, aa, act_attention, freeze_at)
    if depth not in BLOCKS_PER_STAGE:
        raise ConfigError(f"MODEL.RESNETS.DEPTH must be one of {sorted(BLOCKS_PER_STAGE)}, got {depth}")
    deform_on_per_stage = list(deform_on_per_stage)
    basic = depth in (18, 34)
    if basic and (res2_out_channels != 64 or res5_dilation != 1 or num_groups != 1
                  or any(deform_on_per_stage)):
        raise ConfigError("R18/R34 need RESNETS.RES2_OUT_CHANNELS=64, RES5_DILATION=1, "
                          "NUM_GROUPS=1 and no DEFORM_ON_PER_STAGE")
    if res5_dilation not in (1, 2):
        raise ConfigError(f"MODEL.RESNETS.RES5_DILATION must be 1 or 2, got {res5_dilation}")

    stem = BasicStem(in_channels=in_channels, out_channels=stem_out_channels, norm=norm)
    channels_in, channels_out = stem_out_channels, res2_out_channels
    bottleneck_channels = num_groups * width_per_group
    stages = []
    for idx, stage in enumerate(STAGE_NAMES):
        dilation = res5_dilation if stage == "res5" else 1
        first_stride = 1 if idx == 0 or (stage == "res5" and dilation == 2) else 2
        num_blocks = BLOCKS_PER_STAGE[depth][idx]
        kwargs = {
            "num_blocks": num_blocks,
            "stride_per_block": [first_stride] + [1] * (num_blocks - 1),
            "in_channels": channels_in,
            "out_channels": channels_out,
            "norm": norm,
        }
        if not basic:
            kwargs.update(bottleneck_channels=bottleneck_channels, stride_in_1x1=stride_in_1x1,
                          dilation=dilation, num_groups=num_groups)
        attention = _stage_attention(aw, aa, act_attention, stage)
        if attention and deform_on_per_stage[idx]:
            deform = [name for name, on in zip(STAGE_NAMES, deform_on_per_stage) if on]
            raise ConfigError(
                f"{stage}: deformable conv and attention cannot share a stage (the fused "
                f"modulation has no deformable form). MODEL.RESNETS.DEFORM_ON_PER_STAGE puts "
                f"deformable conv in {deform}: keep it only in stages without attention "
                f"(remove {stage} from MODEL.AW/AA/ACT_ATTENTION.STAGES) or turn it off there")
        if attention:
            kwargs["block_class"] = AttentionBasicBlock if basic else AttentionBottleneckBlock
            kwargs.update(attention)
        elif basic:
            kwargs["block_class"] = BasicBlock
        elif deform_on_per_stage[idx]:
            kwargs.update(block_class=DeformBottleneckBlock, deform_modulated=deform_modulated,
                          deform_num_groups=deform_num_groups)
        else:
            kwargs["block_class"] = BottleneckBlock
        try:
            stages.append(ResNet.make_stage(**kwargs))
        except ConfigError:
            raise
        except ValueError as e:  # a layer refusing its arguments, e.g. ATTENTION_GROUPS
            raise ConfigError(f"{stage}: {e}; check MODEL.AW / MODEL.AA") from e
        channels_in = channels_out
        channels_out *= 2
        bottleneck_channels *= 2
    return ResNet(stem, stages, out_features=list(out_features), freeze_at=freeze_at)


def resnet_arguments(cfg, input_shape):
    """:func:`attention_resnet`'s arguments from a YAML config (MODEL.RESNETS, MODEL.BACKBONE,
    MODEL.AW, MODEL.AA, MODEL.ACT_ATTENTION)."""
    res = cfg.MODEL.RESNETS
    return dict(
        depth=res.DEPTH, in_channels=input_shape.channels, stem_out_channels=res.STEM_OUT_CHANNELS,
        res2_out_channels=res.RES2_OUT_CHANNELS, num_groups=res.NUM_GROUPS,
        width_per_group=res.WIDTH_PER_GROUP, stride_in_1x1=res.STRIDE_IN_1X1,
        res5_dilation=res.RES5_DILATION, norm=res.NORM,
        deform_on_per_stage=res.DEFORM_ON_PER_STAGE, deform_modulated=res.DEFORM_MODULATED,
        deform_num_groups=res.DEFORM_NUM_GROUPS, out_features=res.OUT_FEATURES,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
        **{arg: _section(cfg, arg) for arg in ATTENTION_SECTIONS},
    )


@BACKBONE_REGISTRY.register()
def build_aw_resnet_backbone(cfg, input_shape: ShapeSpec):
    """Detectron2's ResNet with attention blocks in the configured stages (YAML configs)."""
    _check_res5_is_built(cfg, cfg.MODEL.RESNETS.OUT_FEATURES)
    return attention_resnet(**resnet_arguments(cfg, input_shape))
