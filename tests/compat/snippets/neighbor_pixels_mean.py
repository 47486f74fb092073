import remotior_sensus

rs = remotior_sensus.Session(2, 1000)
# input_bands, size, output_path, overwrite, stat_name, structure, circular_structure
output = rs.band_neighbor_pixels(
    ["$DATA/lc/classes.tif"],
    1,
    "$DATA/out/neighbor_mean",
    False,
    "Mean",
    None,
    False,
    output_data_type="Float32",
    prefix="mean_",
)
print(output.check)
print(output.paths)
rs.close()
