class AgentError(Exception):
    """An error reported as JSON: a stable code for programs, a message for people."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def as_agent_error(e: Exception, out_of_memory: str) -> AgentError:
    """Any failure as the AgentError the host gets back (the agent must always answer in JSON)."""
    if isinstance(e, AgentError):
        return e
    if isinstance(e, MemoryError):
        return AgentError("resource_limit", out_of_memory)
    return AgentError("internal", f"{type(e).__name__}: {e}")
