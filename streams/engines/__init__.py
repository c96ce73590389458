"""Other engines that run the shared decision path (the Faust app)."""
