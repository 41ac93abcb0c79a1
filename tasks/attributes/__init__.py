"""Face attributes (MobileNets paper, Section 4.5, Table 12): a multi-label MobileNet head, supervised
training (``python -m tasks.attributes.train``) and per-attribute AP evaluation
(``python -m tasks.attributes.evaluate``). Distillation from a teacher is ``python -m distill.train``."""

from tasks.attributes.model import attribute_loss, build_attribute_model

__all__ = ["attribute_loss", "build_attribute_model"]
