from .setup import setup
from .trainer import InferenceTimer, Trainer
