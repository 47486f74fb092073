import remotior_sensus

rs = remotior_sensus.Session(n_processes=2, available_ram=2000)
rs.set(n_processes=1, available_ram=500)
print(rs.configurations.n_processes)
output = rs.band_sieve(
    input_bands=["$DATA/lc/classes.tif"],
    size=5,
    output_path="$DATA/out/session_set",
    connected=True,
)
print(output.check)
print(output.paths)
rs.set(n_processes=2)
print(rs.configurations.n_processes)
output = rs.band_dilation(
    input_bands=["$DATA/lc/classes.tif"],
    value_list=[7],
    size=1,
    output_path="$DATA/out/session_set",
    prefix="dilation_",
)
print(output.check)
print(output.paths)
rs.close()
