"""Pure PyTorch pi0 / pi0.5: SigLIP, Gemma, the prefix cache and the maskless denoise. No ROS here."""
