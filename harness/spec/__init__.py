"""What the model is: the declarative spec (``schema``), the user's designs (``presets``) and a numpy
forward pass that defines each layer exactly (``reference``)."""
