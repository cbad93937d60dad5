"""The file names of PEFT's adapter folder."""
CONFIG_NAME = "adapter_config.json"
SAFETENSORS_NAME = "adapter_model.safetensors"
BIN_NAME = "adapter_model.bin"
FORMAT_VERSION = "0.21.2"  # the PEFT on-disk format this writer follows
