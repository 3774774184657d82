"""The MIOpen library: convolution and batch-norm problems, their tables and MIOpen's files."""
