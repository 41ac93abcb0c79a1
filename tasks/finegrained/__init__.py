"""Fine-grained recognition (MobileNets paper, Section 4.3, Table 10): Stanford Dogs and other class sets."""
