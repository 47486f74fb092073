import remotior_sensus

rs = remotior_sensus.Session(n_processes=2, available_ram=1000)
for size in (12, 3):
    # the same directory each time: the tool writes its outputs over the earlier ones
    output = rs.band_sieve(
        input_bands=["$DATA/lc/classes.tif"],
        size=size,
        output_path="$DATA/out/sieve_rerun",
        connected=False,
        prefix="sieve_",
    )
    print(output.check)
print(output.paths)
rs.close()
