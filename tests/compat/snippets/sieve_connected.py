import remotior_sensus

rs = remotior_sensus.Session(n_processes=2, available_ram=1000)
output = rs.band_sieve(
    input_bands=["$DATA/lc/classes.tif"],
    size=6,
    output_path="$DATA/out/sieve_connected",
    connected=True,
    prefix="sieve_",
)
print(output.check)
print(output.paths)
rs.close()
