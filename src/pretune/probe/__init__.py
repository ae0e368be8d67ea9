"""Knowledge probing (LAMA T-REx): a frozen LM answers relation facts with one token of its vocabulary."""
