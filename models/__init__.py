"""Model zoo: architectures after the paper, attack recipes, and small shipped models."""
