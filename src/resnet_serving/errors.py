"""The root of the project's error tree.

    ResnetServingError            anything a user can cause and we can explain in one line
     +-- model_builder.errors.ModelBuilderError   bad dataset, weights, architecture, export ...
     +-- service.errors.GatewayError              mapped to HTTP status + JSON in service.errors
     +-- loadtest.errors.LoadTestError            bad target, bad options, unreadable results

The CLI prints `error: <message>` for these and exits 2; anything else is a bug and keeps
its traceback.
"""


class ResnetServingError(Exception):
    """An error the user can fix; its message is one line that says what and why."""
