"""The advice: which batch size and learning rate, predicted from measurements."""
