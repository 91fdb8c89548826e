"""Numpy in, numpy out: tokenizer, transforms, chunk timing and the Policy. No ROS here."""
