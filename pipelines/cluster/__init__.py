"""Where the work runs and where its files live: joining or starting Ray, folders every
node must see, local or s3:// storage, and the processes' threading."""
