"""From run directories to a paper: tidy tables, forgetting metrics, figures. Never imports research.training."""
