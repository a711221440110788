from .checkpoint import AWCheckpointer, is_attention_param
from .trainer import Trainer, create_ddp_model, load_config, setup
