from .checkpoint import AWCheckpointer, is_attention_param
from .cli import user_errors
from .setup import load_config, setup
from .trainer import InferenceTimer, Trainer, create_ddp_model
