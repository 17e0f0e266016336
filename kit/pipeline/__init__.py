"""The job end to end: build (compress -> package -> evaluate -> gate) and measure (bench on a
device, record, compare with twins and baselines); the demo is recipes run through both."""
