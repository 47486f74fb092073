import remotior_sensus

rs = remotior_sensus.Session(n_processes=2, available_ram=1000)
output = rs.band_sieve(
    input_bands=["$DATA/lc/classes.tif", "$DATA/lc/classes2.tif"],
    size=2,
    output_path="$DATA/out/sieve_directory",
    connected=False,
    prefix="sieve_",
)
print(output.check)
print(output.paths)
rs.close()
