"""The Mixture-of-Thoughts model: configuration, frozen experts, the router, the interaction layers, the losses and
checkpoints — everything training and decoding share. It knows nothing of how tokens are decoded (`decoding/`)."""
