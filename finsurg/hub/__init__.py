"""Upload of variant directories to the Hugging Face Hub."""
