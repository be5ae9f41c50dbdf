"""Scripts shipped inside the sandbox release packs (they run on hosts, stdlib only)."""
