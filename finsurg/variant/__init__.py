"""The variant directory: the contract between export, verify, eval, card and push."""
