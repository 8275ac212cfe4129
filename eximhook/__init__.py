"""eximhook: block Exim senders who mail many nonexistent recipients.

Kept empty of imports: every hook process imports this package first.
"""

__version__ = "0.1.0"
