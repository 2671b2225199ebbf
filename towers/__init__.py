"""Two-tower model: item tower, user tower, joint TFRS model, training and evaluation."""
