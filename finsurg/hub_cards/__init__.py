"""Model cards for variants and upload to the Hugging Face Hub."""
