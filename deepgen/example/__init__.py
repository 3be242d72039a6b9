"""The example method: a mixture of products of Bernoullis over binary images (PRML Sec. 9.3.3)."""
