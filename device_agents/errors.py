class AgentError(Exception):
    """An error reported as JSON: a stable code for programs, a message for people."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message
